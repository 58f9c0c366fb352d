"""``python -m pwm_bench`` is the ``pwm-bench`` command."""

from pwm_bench.cli import main

main()
