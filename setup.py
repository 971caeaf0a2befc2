"""mobilevlm_agent: pip-installable (`pip install -e .`) and colcon-buildable (ament_python)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mobilevlm_agent"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="On-board MobileVLM vision-language understanding and planning for robots, with ROS 2 nodes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "ros_nodes", "ros_nodes.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/models", glob("models/*.yaml")),
    ],
    install_requires=[
        "torch>=2.3",
        "numpy",
        "sentencepiece",
        "safetensors",
        "pyyaml",
        "opencv-python-headless",
        "pillow",
        "tqdm",
        "mujoco>=3.1",  # the embedded simulator (headless with MUJOCO_GL=egl)
    ],
    extras_require={
        # transformers is only a parity reference in tests, never imported by the library
        "train": ["matplotlib"],
        "test": ["pytest", "pytest-xdist", "hypothesis", "transformers", "matplotlib"],
    },
    entry_points={"console_scripts": ["mobilevlm-agent = mobilevlm_agent.cli:main"]},
    package_data={"mobilevlm_agent.train": ["recipes/*.yaml"]},
    zip_safe=False,
)
