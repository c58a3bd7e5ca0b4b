"""Networks that only infer, run in the fastest engine the hardware has: PyTorch, ONNX Runtime or OpenVINO.

The frozen pass (features, frozen prefixes, augmented views, advice's probes, test-time
augmentation's mirrored pass) and the using of a trained model (evaluate, predict, serve) all run
images through layers that do not train. ``headstart.engines.choice.Engine`` runs such a module:
exported once to ONNX (``headstart.engines.onnx_files``, cached on disk by the module's weights and
input shape), then run by ONNX Runtime or OpenVINO (``headstart.engines.runtimes``), after a
parity check of its first batch against PyTorch fp32.

>>> engine = Engine("auto")                                               # doctest: +SKIP
>>> run, first = engine.start(module, batch, module, images=10_000)      # doctest: +SKIP
>>> engine.used                                                           # doctest: +SKIP
{'engine': 'openvino', 'precision': 'fp32', 'parity_rel_error': 2e-06}
"""
