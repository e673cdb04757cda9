"""The runners: what takes tasks off the queue and keeps the queue going.

``home`` puts the parts together (the composition root); ``worker`` runs claimed tasks;
``dispatcher`` is one pass from cron, ``daemon`` the long-lived ``wait-queue``; ``periodic``
holds the periodic queues' arithmetic and stored state; ``crontab`` and ``service`` install
the runners into cron and as a system service; ``lifecycle`` is what the task commands do;
``doctor`` checks a whole home. They stand on the core (contexts, queues, provision) and the
ground (``hostctl``); only the command line stands on them.
"""
