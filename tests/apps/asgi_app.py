"""A small ASGI app for the tests of servers wsgimux does not write (uvicorn): HTTP requests
are answered with what the server saw (version, path, raw path, headers, body length);
WebSockets echo every message back, text as text and bytes as bytes (the text "pid" gets the
serving process's pid)."""
import json
import os


async def app(scope, receive, send):
    if scope['type'] == 'lifespan':
        while True:
            message = await receive()
            if message['type'] == 'lifespan.startup':
                await send({'type': 'lifespan.startup.complete'})
            elif message['type'] == 'lifespan.shutdown':
                await send({'type': 'lifespan.shutdown.complete'})
                return
    elif scope['type'] == 'websocket':
        await receive()  # websocket.connect
        await send({'type': 'websocket.accept'})
        while True:
            message = await receive()
            if message['type'] == 'websocket.disconnect':
                return
            if message.get('text') == 'pid':
                await send({'type': 'websocket.send', 'text': str(os.getpid())})
            elif message.get('text') is not None:
                await send({'type': 'websocket.send', 'text': message['text']})
            else:
                await send({'type': 'websocket.send', 'bytes': message['bytes']})
    elif scope['type'] == 'http':
        length = 0
        while True:
            message = await receive()
            length += len(message.get('body', b''))
            if not message.get('more_body'):
                break
        seen = {
            'http_version': scope['http_version'],
            'path': scope['path'],
            'raw_path': scope['raw_path'].decode('latin-1'),
            'headers': [[k.decode('latin-1'), v.decode('latin-1')] for k, v in scope['headers']],
            'body_length': length,
            'client': scope.get('client'),
            'pid': os.getpid(),
        }
        body = json.dumps(seen).encode('utf-8')
        await send({'type': 'http.response.start', 'status': 200,
                    'headers': [(b'content-type', b'application/json')]})
        await send({'type': 'http.response.body', 'body': body})
