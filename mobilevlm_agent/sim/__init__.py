"""The embedded simulator: scene specs, a MuJoCo world with a planar mobile base and camera, Gazebo export."""
