"""/etc/jupyter/nbgrader_config.py of the single-user image (deploy/k8s/Dockerfile): the exchange.

Students and instructors share the exchange on a ReadWriteMany volume mounted at /srv/nbgrader/exchange
(deploy/k8s/values.yaml). nbgrader's file-system exchange relies on Unix permissions (inbound is 0733 and
each submission belongs to its student's uid), so values.yaml gives every user a uid of their own.
"""

c = get_config()  # noqa: F821 - provided by nbgrader
c.CourseDirectory.course_id = "dlcv"
c.Exchange.root = "/srv/nbgrader/exchange"
c.Exchange.path_includes_course = True
