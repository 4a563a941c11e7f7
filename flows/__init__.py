"""stashflow.flows"""
