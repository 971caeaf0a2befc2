"""Thin ROS 2 node adapters over mobilevlm_agent (one node per file). The library itself never imports rclpy."""
