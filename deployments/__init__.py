"""stashflow.deployments"""
