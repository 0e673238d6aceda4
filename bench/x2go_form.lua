-- wrk: one fixed X2Go form request, body from the X2GO_BODY environment variable.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = os.getenv("X2GO_BODY")
