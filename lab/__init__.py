"""The lab: the whole system on local systemd containers, deployed by the production playbooks.

``topology`` names its hosts, addresses, networks, images and container flags (the one place
they are written); ``cli`` is ``bin/lab``; ``molecule`` creates the molecule scenarios'
containers with the same flags. The image build files are in ``images/``.
"""
