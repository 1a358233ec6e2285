"""The live worker: Faust agents drive the shared batch step (streams.core.step).

app        the Faust app: topics, tables, the ingest and entity agents
setup      Faust set-up: broker URL, credentials, consumer tuning, EntityTable
worker     one worker process: processor, rules follower, metrics, app
metrics    the Prometheus metrics a worker serves
"""
