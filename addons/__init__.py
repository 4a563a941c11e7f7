"""stashflow.addons"""
