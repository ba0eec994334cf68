"""Controllers: the keyboard, agents, schedules and replays that choose a world's actions."""

from controllers.base import Controller, check_names
from controllers.keyboard import KeyboardController
from controllers.random_agent import RandomController
from controllers.replay import ReplayController
from controllers.scripted import ScriptedController

__all__ = [
    "Controller",
    "KeyboardController",
    "RandomController",
    "ReplayController",
    "ScriptedController",
    "check_names",
]
