"""The whole CDN on one machine (`gslb demo`): the integration layer that runs the
wings as separate processes. Not a wing: it may import gslb and edge, and
nothing imports it."""
