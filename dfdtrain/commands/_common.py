"""What every command shares: the argument parser that answers a bad flag with one line."""

import argparse


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints a usage block before the error; we print only the error line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
