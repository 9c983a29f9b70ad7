"""A real Flask app for the framework tests: URL building, forms, JSON, streaming, cookies."""
from flask import Flask, Response, jsonify, request, url_for

app = Flask(__name__)


@app.route('/')
def index():
    return jsonify(
        script_root=request.script_root,
        path=request.path,
        item_url=url_for('item', name=u'caf\u00e9'),
        url=request.url,
        remote_addr=request.remote_addr,
    )


@app.route('/item/<name>')
def item(name):
    return u'item %s' % name


@app.route('/echo', methods=['POST'])
def echo():
    return jsonify(
        form=request.form.to_dict(),
        args=request.args.to_dict(),
        json=request.get_json(silent=True),
        length=len(request.get_data()),
    )


@app.route('/stream')
def stream():
    def lines():
        for i in range(1000):
            yield 'line %d\n' % i
    return Response(lines(), mimetype='text/plain')


@app.route('/cookies')
def cookies():
    resp = jsonify(seen=request.cookies.to_dict())
    resp.set_cookie('a', '1')
    resp.set_cookie('b', '2')
    return resp


application = app
