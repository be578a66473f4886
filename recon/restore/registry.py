"""The restoration methods by name: the one place that knows them (``project.*.method`` in
params.yaml takes these names). Adding a method is one module with a :class:`recon.restore.method.Method`
subclass and one line here. Kept free of imports, so that the params schema can read the names
without loading torch."""
METHODS = {
    "official": "recon.restore.official:OfficialMethod",     # NVIDIA's projector
    "robust": "recon.restore.robust:RobustMethod",           # W -> W+ -> W++ (Poirier-Ginter & Lalonde 2023)
}
