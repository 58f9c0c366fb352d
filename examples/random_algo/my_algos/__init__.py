"""Example plug-in package for pwm-bench: a uniform-random baseline."""
