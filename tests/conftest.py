"""Shared pytest fixtures: see pgcluster.py for the throwaway clusters."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
