"""Local tooling: a real stack without Docker, simulated traffic, the demo.

stack          Tansu (Kafka protocol), ClickHouse (chdb served on loopback), Redis
chdb_server    the child process serving chdb's HTTP and native ports
simulate       the traffic simulator (scenarios with ground truth)
demo           ``make demo``: stack, worker, sinks, traffic, report
evaluate       precision/recall of the labels against the simulator's truth
"""
