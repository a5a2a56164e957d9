"""GPU node health: typed readings (NVML, DCGM diagnostics, the kernel log) and pure verdicts over them.

Readers (`nvml`, `dcgm`, `kernel_log`) turn what the driver and tools report into the dataclasses of `readings`;
`verdict` judges those readings with no I/O, so every rule is tested on readings written from the documented
formats.
"""
