"""Beyond emergencies: service requests, work orders, welfare visits, rescue timelines, supervision."""
