"""The kernel front: the one endpoint a Jupyter client sees for a replicated kernel.

It owns the five channels of the connection file the provisioner wrote, supervises the replica processes, asks an
:class:`~notebookos.kernel.front.executor.ExecutorPolicy` which replica leads each cell and relays only that
replica's replies and outputs. Modules: ``app`` (configuration and startup), ``relay`` (channels and routing),
``supervisor`` (replica processes, liveness, replacement), ``executor`` (the choice of executor), ``wire`` (signed
multipart frames).
"""
