"""Plain, typed service functions: they do the work; admin and commands are thin edges."""
