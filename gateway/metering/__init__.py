"""Usage metering: per tenant, model, hour and day; and a durable event per request."""
