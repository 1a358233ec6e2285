"""What live and replay share, so they cannot differ.

envelope     decode, validate, hash phones (InvalidEventError reason codes)
order        SourceEvent and the processing order (merge_sources, PartitionMerge)
processor    one key's events -> state + hit/blacklist records (features/ + rules/)
step         the batch step: fan-out, grouping, warm-up, poison isolation, counters
deadletter   DLQ messages of invalid and poison events
assembly     settings -> spec, engine, rule set, list provider, processor
rulestore    rule-set versions on the compacted rules topic: publish, read, follow
kafka        confluent-kafka clients and topic creation from settings
outputs      ClickHouse clients and the runner feeding a sink from Kafka
"""
