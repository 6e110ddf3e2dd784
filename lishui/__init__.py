"""The composition root: the ``lishui`` command and the demo, which put the services together.

Services never import each other; only this package and the tests compose them.
"""
