"""The secure channel: Noise XX binding each connection to a peer identity."""
