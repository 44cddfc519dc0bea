"""Layer 2, from a YAML file to a checked, resolved config: plugin discovery (entry points), validation,
the memory estimate and the machine checks.
"""
