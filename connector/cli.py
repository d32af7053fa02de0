import click
@click.group()
def main():
    """dmp-connector"""
