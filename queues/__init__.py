"""The task queue: the task model (``model``), the seam every runner and command goes
through (``backend``), and its implementation as a spool directory under the home
(``spool``, with ``listing``, ``admission``, ``outbox``, ``liveness``, ``layout``), plus
the front end's side of the drop box (``dropbox``). It knows nothing of what a task does.
"""
