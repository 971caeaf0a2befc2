"""The ROS-free agent: typed contracts, the closed action grammar, the safety governor."""
