"""The pytest plugin: options, collection of the case matrix, the prepared-case fixture, compare at session end."""
