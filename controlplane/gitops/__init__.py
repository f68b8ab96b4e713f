"""Following a folder, or a git repository, of model folders: new content becomes versions and rollouts.

``sources`` read the watched root (file stats, or git objects of a commit),
``watcher`` decides what to push and roll out and reports what it refuses,
``transports`` carry the pushes and rollouts (REST API, or the services of
this process).
"""
