"""Worker agents that run retraining jobs on GPU machines (built in a later issue).

Workers talk only to Redis and blob storage, never to the database.
"""
