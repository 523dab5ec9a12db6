"""The model registry: trained models (a URI in storage) with the task that produced them,
tags and a published flag; every registration, tag and publication is an event triggers
can react to."""
