"""What the kernel side (front, replicas, provisioner) and the cluster side (scheduler, host daemons, ``up``) both
need, so that neither package imports the other:

- :mod:`.client`: async clients for the scheduler's and the host daemons' REST APIs;
- :mod:`.secrets`: where a process finds the scheduler (environment names) and how tokens and private files are
  read and written;
- :mod:`.replicas`: how a replica process is started (its command line) and how its ports are chosen.
"""
