"""Value models, rewards, data collection and TD(lambda) training for vas-api."""
