"""The command line: parse options, call the jobs and the library, print progress and turn typed
errors into one line with the flag that helps.
"""
