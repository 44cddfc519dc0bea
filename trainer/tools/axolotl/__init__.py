"""Bring an Axolotl config in: `trainer convert AXOLOTL.yml`. Every key of the input is accounted
for — carried into our config, dropped with a note (what it did in Axolotl), or refused (it changes
what is trained and we have no counterpart). keys.yaml is the inventory of Axolotl's whole config
schema (what each key does, its default, the proposal); convert.py holds the rules that carry keys."""
