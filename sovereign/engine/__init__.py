"""The live system: the supervisor and the processes it runs (gateway, workers, coordinator,
risk), the layout they share, and the control socket the operator's CLI talks to."""
