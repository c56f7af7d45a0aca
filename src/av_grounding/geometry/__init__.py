"""Rigid transforms, camera models and 3D boxes, shared by every stage that projects anything."""
