"""Pictures for people: the saliency maps of ``smcli explain`` as PNG and HTML."""
