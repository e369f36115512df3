"""The stream agents (faust-streaming): data-mart counts and the crawl, labelling and training commands.

    python -m streams worker         # one worker; start more for more throughput (they share the partitions)
"""
