"""`sshexec serve`: the web pages and HTTP API over the run history.

    app.py       the FastAPI app, errors mapped to HTTP, uvicorn and SIGTERM
    auth.py      bearer tokens, browser sessions, CSRF, the brake on failed logins
    gate.py      who is asking (/api), found from the headers before the body is read
    api.py       /api: runs, live logs (server-sent events), artifacts, triggers, cancels, workers, runbooks
    pages.py     the HTML pages (templates/), made live by static/app.js
    runs.py      the runs this server starts (the library's Runner, one thread each): queueing, starting what
                 its node claimed, and cancelling
    node.py      this server as a node of the cluster: check-ins, claims up to its task cap, lost nodes,
                 schedules' ticks, the maintenance lease
    cluster_api.py   /health (for a load balancer), /api/nodes (drain), /api/schedules
    workers.py   the workers' health, cached (and shared through the database by the maintenance node)

Imported only by `sshexec serve`: FastAPI is an extra (`pip install sshexec[server]`).
"""
