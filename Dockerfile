# chute in a container: the demo by default; mount your own config and folders.
#   docker build -t chute .                          # add --build-arg FFMPEG=1 for thumbnails
#   docker run --rm chute                            # the demo, until idle
#   docker run -v $PWD/my.toml:/srv/chute/chute.toml -v $PWD/inbox:/srv/chute/inbox \
#     -v chute-work:/srv/chute/.chute chute run /srv/chute/chute.toml
FROM python:3.12-slim

ARG FFMPEG=0
RUN if [ "$FFMPEG" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends ffmpeg \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin chute

WORKDIR /opt/chute
COPY pyproject.toml README.md LICENSE ./
COPY runtime ./runtime
COPY plugins ./plugins
RUN pip install --no-cache-dir --disable-pip-version-check ".[redis]"

# The working folder (state, durable topics, the API token) and the watch folder
# are volumes: a new container picks up where the last one stopped.
WORKDIR /srv/chute
COPY --chown=chute:chute configs/demo.toml configs/demo_tasks.py ./
RUN install -d -o chute -g chute -m 0700 .chute inbox
VOLUME ["/srv/chute/.chute", "/srv/chute/inbox"]
USER chute

# chute forwards SIGTERM to its executors' process groups and drains within
# shutdown_grace; give `docker stop -t` at least that long.
STOPSIGNAL SIGTERM
ENTRYPOINT ["chute"]
CMD ["run", "/srv/chute/demo.toml", "--until-idle"]
