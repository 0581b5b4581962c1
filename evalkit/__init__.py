"""Evaluation kit: DAVIS/MeViS J&F metrics, dataset layouts, synthetic referring videos.

Modules (torch-free):
  evalkit.metrics   per-frame J (region IoU) and F (DAVIS boundary F-measure)
  evalkit.formats   MeViS / Ref-YouTube-VOS / Ref-DAVIS17 / ReVOS readers and writers, predictions
  evalkit.scoring   dataset-level scores in the MeViS protocol
  evalkit.synth     synthetic referring-video generator

Bottom floor, beside kernels/: imports nothing of the project; the runtime (writing
predictions), the reference, training and the benchmarks import it.
"""
