"""mobilevlm_agent: pip-installable (`pip install -e .`) and colcon-buildable (ament_python)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mobilevlm_agent"
NODES = ("camera_node", "encoder_node", "planner_node", "agent_node", "safety_node", "sim_node", "vlm_composition")

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
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py") + glob("launch/*.launch.yaml")),
        (f"share/{PACKAGE}/config", glob("config/*")),
        (f"share/{PACKAGE}/models", glob("models/*.yaml")),
        (f"share/{PACKAGE}/models/demo", glob("models/demo/*")),
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
        # GGUF export for llama.cpp, and (bench/compare.py) the process-memory probe
        "export": ["gguf", "psutil"],
        # the onnxruntime backend (`--backend ort`) and `export onnx`
        "onnx": ["onnx", "onnxruntime"],
        "test": ["pytest", "pytest-xdist", "hypothesis", "transformers", "matplotlib", "cyclonedds", "gguf", "onnx", "onnxruntime"],
        # ROS 2 Jazzy from PyPI, for machines without a system ROS 2. On a robot that sources its own ROS 2
        # (Humble to Kilted), skip this extra: the nodes use only rclpy APIs common to those distributions.
        "ros": [f"ros-jazzy-{p}" for p in ("rclpy[fastrtps]", "std-msgs", "sensor-msgs", "geometry-msgs", "nav-msgs",
                                           "diagnostic-msgs", "std-srvs", "rosgraph-msgs", "lifecycle-msgs")],
    },
    entry_points={"console_scripts": ["mobilevlm-agent = mobilevlm_agent.cli:main"]
                  + [f"{node} = ros_nodes.{node}:main" for node in NODES]},
    package_data={"mobilevlm_agent.train": ["recipes/*.yaml"]},
    zip_safe=False,
)
