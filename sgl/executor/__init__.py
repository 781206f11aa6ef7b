"""The model executor: ModelRunner, ModelWorkerBatch -> ForwardBatch, the KV pools and the decode fast paths.

The scheduler (``sgl.engine``) hands the runner a :class:`ModelWorkerBatch` of plain tensors and
tuples; nothing here knows a ``Req``.
"""
