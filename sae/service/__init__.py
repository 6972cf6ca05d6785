"""`sae serve`: a job queue with an HTTP API and a web UI over the `sae` command line.

    state.py    the state directory: its lock, database file and one folder per job
    db.py       the SQLite job table (the only record of what was asked and what happened)
    submit.py   a YAML body -> validated config(s), refused with the CLI's one-line errors
    sweep.py    list-valued keys -> the jobs of a sweep
    command.py  the child command line of a job (the one place that names the CLI module)
    runners.py  how a job's command runs: a local process group, or a submitit (Slurm) job
    processes.py  process groups by (pid, start time): find and stop what a crash left running
    workers.py  threads that take queued jobs and run them, and recover after a crash
    progress.py a run's metrics.jsonl -> progress, ETA and curves
    jobs.py     a job as the API shows it: record, progress, metrics, files
    app.py      the FastAPI app (API + pages); pages.py renders the HTML
    server.py   `sae serve`: lock, recover, workers, uvicorn; client.py: `sae submit`

Jobs run as child processes of the CLI, never in the server's process, so the server stays
light (no torch import) and a job's crash cannot take the queue down.
"""
