"""The HTTP floor for benchmarks/serve_load.py: a bare ASGI app under uvicorn + httptools + uvloop that answers
every request with fixed bytes (a v2 infer response's size), on its own SO_REUSEPORT socket; start one per
core. No model, no parsing: what any Python HTTP server on this machine costs per request.

  python benchmarks/http_floor.py PORT
"""
import socket
import sys

import uvicorn

BODY = (b'{"model_name":"digits","model_version":"1","outputs":[{"name":"classes","datatype":"INT32",'
        b'"shape":[1],"data":[7]}]}')


async def app(scope, receive, send):
  if scope['type'] == 'lifespan':
    while True:
      message = await receive()
      if message['type'] == 'lifespan.startup':
        await send({'type': 'lifespan.startup.complete'})
      elif message['type'] == 'lifespan.shutdown':
        await send({'type': 'lifespan.shutdown.complete'})
        return
  more = True
  while more:  # read the body, as a real handler must
    more = (await receive()).get('more_body', False)
  await send({'type': 'http.response.start', 'status': 200,
              'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(BODY)).encode())]})
  await send({'type': 'http.response.body', 'body': BODY})


def main():
  port = int(sys.argv[1])
  sock = socket.socket()
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  sock.bind(('127.0.0.1', port))
  sock.listen(2048)
  config = uvicorn.Config(app, loop='uvloop', http='httptools', lifespan='on', access_log=False, log_level='warning')
  uvicorn.Server(config).run(sockets=[sock])


if __name__ == '__main__':
  main()
