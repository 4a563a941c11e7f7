"""stashflow.tasks"""
