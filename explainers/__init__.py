"""Models and what they say: encoders, attention MIL, the CAM family, occlusion, training, the explain stage."""
